"""The model zoo beyond the StdCNN/GCNN MNIST pair; importing this module registers:

  vgg16, resnet18              CIFAR StdCNNs of Kamath et al. (cifar_nets.py); their
                               GCNN twins gcnn_vgg16 / gcnn_resnet18 live in gcnn.py
  lenet_madry, resnet_madry,   adversarial-training models of Madry et al. and
  wrn34_10                     TRADES (robust_nets.py)
  sgr_cnn, mlp                 the SGR paper's CNN and an MLP baseline (small_nets.py)
  checkpoint, torchscript,     models from files: a state dict for a registered architecture,
  robustbench                  a TorchScript file, RobustBench WideResNets (external.py, robustbench.py)
"""

from . import cifar_nets, robust_nets, small_nets  # noqa: F401

# Models raystudy did not train: checkpoint, torchscript (external.py), robustbench.
from . import external, robustbench  # noqa: F401,E402
