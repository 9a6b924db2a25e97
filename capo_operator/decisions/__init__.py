"""Pure decisions: what to reserve and what to release, and how addresses, durations, selectors and
pending record details are read. No I/O: everything here is tested without a server."""
