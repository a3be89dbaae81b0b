"""``python -m reconciler``: the same CLI as the ``reconciler`` command."""

from reconciler.cli.main import main

raise SystemExit(main())
