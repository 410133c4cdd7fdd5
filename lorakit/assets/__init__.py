"""Data files shipped inside the package (the tiny model's training corpus); a package so setuptools ships it as one."""
