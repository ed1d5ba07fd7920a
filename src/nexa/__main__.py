from nexa.cli import main

raise SystemExit(main())
