from jmed.cli import main

main()
