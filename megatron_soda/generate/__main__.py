from megatron_soda.generate.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
