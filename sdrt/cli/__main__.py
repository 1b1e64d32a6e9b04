from sdrt.cli import main

main()
