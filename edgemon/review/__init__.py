"""``edgemon review``: a local web page to hear, see and judge detections.

``reviews`` reads and writes the verdicts and ranks what to review next; ``excerpt`` cuts a
detection's audio; ``spectrogram`` draws it as a PNG; ``charts`` draws calls and effort as SVG;
``app`` serves them (Starlette, run by uvicorn). Nothing is fetched from the internet.
"""
