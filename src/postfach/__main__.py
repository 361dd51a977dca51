from postfach.cli.launch import main

main()
