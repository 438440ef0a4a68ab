from absl import app

from tpu_train.embedded.run import main

app.run(main)
