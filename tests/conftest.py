import os
import sys

import torch

# Tests import the top-level scripts as modules and must stay fast on a 2-core CPU.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(2)
