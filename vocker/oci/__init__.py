"""Images outside the store: OCI artifacts in registries, image layouts (directories, tar files,
static web servers). See docs/format.md, "Distribution"."""
