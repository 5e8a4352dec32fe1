"""pvgate billing: the control plane (ledger, usage consumer, orders, refunds, alerts).

Built on `metering`; never imported by the gateway.
"""
