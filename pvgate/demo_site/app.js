// Counts the views of this tab, so a reload visibly costs one more page view.
const key = "pvgate-demo-views";
const views = Number(sessionStorage.getItem(key) || 0) + 1;
sessionStorage.setItem(key, String(views));
document.getElementById("views").textContent = `Views in this tab: ${views}`;
