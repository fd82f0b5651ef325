"""The example application: what a user of the kit writes (routes, jobs, its own settings)."""
