"""Long-video measures for any MP4 (``headforcing eval``), and the toy world's ground truth.

- ``measures``: flicker, sharpness, motion, dynamic degree, colour and background drift;
- ``segments``: which videos a file holds and how they are cut into segments;
- ``truth``: the toy-world metrics for videos of the trained toy model;
- ``report``: evaluation of one video, the table and the JSON; ``plot``: measures over time.
"""
