"""The domain model: the types every layer shares and that import nothing above them.

``model`` (projects, sites, devices, variables, roles: the documents and their validation),
``catalog`` (the known variables: canonical units, kinds, QC limits) and ``errors`` (the one
exception tree, each error carrying its HTTP status and row-precise details).
"""
