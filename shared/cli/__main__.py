from shared.cli.main import main

if __name__ == "__main__":  # python -m shared.cli (importing this module runs nothing)
    main()
