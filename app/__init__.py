"""stillframe: "this video, at this time" as an image."""

__version__ = "0.1.0"
