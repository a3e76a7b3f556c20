"""``python -m optistop.render``: the repository renderer (optistop.render.repo)."""

from optistop.render.repo import main

raise SystemExit(main())
