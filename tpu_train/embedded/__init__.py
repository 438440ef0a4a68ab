"""The embedded default: the whole product on CPU with shipped data, as `./launch.sh` runs it."""
