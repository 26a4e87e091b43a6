import sys; from geoseg.cli import main; sys.exit(main())
