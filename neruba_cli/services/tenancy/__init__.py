"""Who acts on which project: projects, keys, members, customers, access and audit."""
