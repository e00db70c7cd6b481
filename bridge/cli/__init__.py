"""The `bridge` command: click commands, thin clients of the layers below."""
