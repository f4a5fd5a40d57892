from callqa.cli import main

raise SystemExit(main())
