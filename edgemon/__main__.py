from edgemon.cli import main

main()
