"""The ``bkv`` command line: thin wrappers over the role packages."""
