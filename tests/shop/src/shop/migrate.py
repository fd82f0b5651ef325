"""`python -m shop.migrate`: the release hook that brings the database schema up to date."""

from shop import db

if __name__ == "__main__":
    print(f"shop.db at schema version {db.migrate()}: {db.path()}")
