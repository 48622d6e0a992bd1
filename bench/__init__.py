"""The side-by-side benchmark: mirrorsync against mbsync and offlineimap (see README.md)."""
