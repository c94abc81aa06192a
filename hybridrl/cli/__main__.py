"""``python -m hybridrl.cli``."""

from hybridrl.cli.root import main

main()
