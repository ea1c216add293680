from swell.cli import main

main()
