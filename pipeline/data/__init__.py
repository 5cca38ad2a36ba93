"""The data set: CIFAR-10 from its sources into one validated HDF5 file."""
