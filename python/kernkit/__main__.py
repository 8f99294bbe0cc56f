"""`python -m kernkit`: print what this build can do on this machine."""

from . import info


def main() -> None:
    for key, value in info().items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        print(f"{key:>15}: {value}")


if __name__ == "__main__":
    main()
