from edgemon.cli import main

if __name__ == "__main__":  # importing the package (as tests do) must not run the CLI
    main()
