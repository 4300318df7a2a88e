from ._tools import main

main()
