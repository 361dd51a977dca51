from postfach.cli.main import main

main()
