"""The page shown instead of a refused page view, in Chinese and English."""

from __future__ import annotations

from html import escape

from metering.buckets import Refusal

_WHY = {
    Refusal.EXHAUSTED: ("页面浏览量已用完", "This site has used up its page views."),
    Refusal.EXPIRED: ("页面浏览量套餐已过期", "This site's page-view package has expired."),
    Refusal.NO_BALANCE: ("该站点尚未开通页面浏览量", "This site has no page-view balance."),
    Refusal.SUSPENDED: ("该站点已暂停服务", "This site has been suspended."),
}
UNAVAILABLE = ("服务暂时不可用，请稍后再试", "The service is temporarily unavailable.")
NOT_FOUND = ("页面不存在", "There is no site at this address.")

_TEMPLATE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{zh} · {en}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;
color:#333;text-align:center}}h1{{font-size:1.4rem}}p{{color:#666}}</style></head>
<body><h1>{zh}</h1><p lang="en">{en}</p>
<p><small>{code}</small></p></body></html>
"""


def render(zh: str, en: str, code: str) -> bytes:
    return _TEMPLATE.format(zh=escape(zh), en=escape(en), code=escape(code)).encode()


# Rendered once: the block path must cost no more than a dictionary lookup.
BLOCK_PAGES = {reason: render(*_WHY[reason], reason.value) for reason in Refusal}
UNAVAILABLE_PAGE = render(*UNAVAILABLE, "unavailable")
NOT_FOUND_PAGE = render(*NOT_FOUND, "unknown_site")
