"""``edgemon review``: a local web page to hear, see and judge detections.

``reviews`` reads and writes the verdicts and ranks what to review next; ``excerpt`` cuts a
detection's audio; ``spectrogram`` draws it as a PNG; ``charts`` draws calls and effort as SVG;
``local_time`` places days and hours in the recorder's time zone; ``app`` serves them (Starlette,
run by uvicorn). Nothing is fetched from the internet.
"""
