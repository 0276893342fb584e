from fdalign.cli import main

raise SystemExit(main())
