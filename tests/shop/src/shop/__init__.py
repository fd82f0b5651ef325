"""A shop's API: the kit's test of deploying an app it does not know."""
