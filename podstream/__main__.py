from podstream.cli import main

raise SystemExit(main())
