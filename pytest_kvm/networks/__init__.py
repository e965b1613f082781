"""Private networks between a session's guests (``networks=``) and their switch process."""
