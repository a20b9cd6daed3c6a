"""Backups: logical dumps, manifests and the catalog of committed backups.

Terms:

- *backup id*: UTC start time plus a random suffix, ``20261204T201500Z-3f9a``;
  sorting ids sorts backups by start time.
- *manifest*: the signed JSON document that describes one backup (objects,
  per-region keys and hashes, server identity, LSNs, profile). It is written to
  each region last, after that region confirmed every object. A backup without
  a manifest does not exist for Resguardo, whatever objects lie beside it.
- *catalog*: the set of backups found by listing manifests in the regions.
- *profile*: per-table facts about the source (row counts, columns, primary
  keys) read in the same snapshot as the dump, used to verify restores.
"""
