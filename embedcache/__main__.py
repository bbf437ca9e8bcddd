from embedcache.cli import main

main()
