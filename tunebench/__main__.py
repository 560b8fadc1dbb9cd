from tunebench.cli import main

main()
