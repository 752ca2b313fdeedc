"""The interactive demo: draw a few characters in a browser, watch the model learn them.

    preprocess.py   drawings (strokes) -> 105x105 Omniglot-like images -> the model's 28x28
    learner.py      fine-tuning and prediction, as ``minireptile eval`` does them, per step
    server.py       the standard-library HTTP server: the pages and their JSON endpoints
    explore.py      the /explore page's app: Reptile, FOMAML, MAML and iMAML on a 2-D task plane
    static/         the page: plain HTML, CSS and JavaScript, nothing fetched from elsewhere

``minireptile demo`` (cli/demo.py) loads a checkpoint and starts the server.
"""
