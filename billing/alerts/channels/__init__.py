"""Channel adapters: one attempt of one delivery, answered as an `Outcome`.

``webhook`` (`billing.alerts.channels.webhook`), ``wecom_robot`` and ``wecom_app``
(`billing.alerts.channels.wecom`).  An adapter never raises for the receiver's sake:
refused targets, network failures and error replies all come back as outcomes.
"""
