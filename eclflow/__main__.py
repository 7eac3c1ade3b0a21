from eclflow.cli import main

main()
