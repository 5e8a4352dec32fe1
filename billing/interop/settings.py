"""The ``[interop]`` section of the billing settings (`billing.settings.BillingSettings`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class InteropSection:
    """Interop accounts and the WeCom callback; every value checked at start-up."""

    trial_accounts: int = 10  # the trial's accounts, unless ops set another count
    expiry_check_s: float = 30.0  # the longest the expiry job sleeps (it wakes at each end)
    # The WeCom callback (POST /wecom/callback/{enterprise_id}), reachable from the internet.
    callback_max_body_bytes: int = 65_536
    callback_rate_per_s: float = 20.0  # per enterprise id named in the path
    callback_burst: int = 60
    callback_global_rate_per_s: float = 500.0  # over every enterprise id
    callback_timeout_s: float = 3.0  # answer WeCom well within its 5 s
    dedup_window_s: float = 86_400.0  # the same message again within this is a duplicate

    def __post_init__(self) -> None:
        checks = (
            ("trial_accounts", 0 <= self.trial_accounts <= 10_000, "0 to 10000"),
            ("expiry_check_s", 0.1 <= self.expiry_check_s <= 3600, "0.1 to 3600 seconds"),
            (
                "callback_max_body_bytes",
                1024 <= self.callback_max_body_bytes <= 1 << 20,
                "1024 to 1048576",
            ),
            ("callback_rate_per_s", 0.1 <= self.callback_rate_per_s <= 10_000, "0.1 to 10000"),
            ("callback_burst", 1 <= self.callback_burst <= 100_000, "1 to 100000"),
            (
                "callback_global_rate_per_s",
                self.callback_rate_per_s <= self.callback_global_rate_per_s <= 100_000,
                "callback_rate_per_s to 100000",
            ),
            ("callback_timeout_s", 0.1 <= self.callback_timeout_s <= 4.5, "0.1 to 4.5 seconds"),
            ("dedup_window_s", 60 <= self.dedup_window_s <= 7 * 86_400, "60 s to 7 days"),
        )
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"{key}: expected {expected}")
