from capo_operator.cli import main

raise SystemExit(main())
