"""WeCom interop accounts (docs/rules.md §1.2): purchase, trial, licence batches, members.

    rules      pure: the trial, licence periods, the active count at an instant, who loses
               an account when it drops, the next expiry, the relay decision
    tables     the ledger tables of interop and of the WeCom relay (on `billing.schema`'s
               metadata); records: their rows as value objects
    licences   interop orders' terms and the licence batch booked when one is paid
    accounts   an enterprise's accounts as of an instant, settling ends, the lock
    members    assign and free members, ops' trial changes, settling (audited)
    jobs       the expiry job: ends recorded at their instant, catching up after downtime
    alerts     the kinds interop_expiring, interop_expired, interop_member_removed
    routes     the admin API routes (docs/architecture.md §6)
    runtime    what routes, callback and job share: the injectable clock, rate limits, hooks
    service    `install_interop`, called by `billing.service.build_app`
    settings   the ``[interop]`` settings section
    clock      the clock protocol
    errors     the refusals of this package

Nothing is imported here: `billing.schema` imports `tables` at its end, so this package
must not pull in anything that needs a complete schema.
"""
