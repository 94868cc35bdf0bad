from ccsvi_cds.cli import main

main()
