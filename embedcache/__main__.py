from embedcache.cli import main

if __name__ == "__main__":
    main()
