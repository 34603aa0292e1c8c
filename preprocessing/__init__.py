"""Data preparation for the AD vs CN T1 MRI bundle: conversion, preprocessing and quality control."""
