"""Compound figures -> panels: the image splitter (``split``), printed panel labels (``labels``) and the
ImageCLEF figure-separation metrics (``metrics``). Same layer as ``concepts``; the build does not import it."""
